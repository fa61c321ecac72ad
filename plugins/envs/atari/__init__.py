"""Atari families: any ALE game, sets of games, one game's modes."""
