"""The ALE game catalogue: ROM ids and names, modes, difficulties, action sets, reference scores.

Games are named either by ALE's ROM id (``space_invaders``) or by the PascalCase name of the
Gymnasium ids (``SpaceInvaders``, as in ``SpaceInvadersNoFrameskip-v4``); both resolve to the ROM
id. Only ROMs that ALE supports in single-player mode are listed (ale-py ships a few two-player
ROMs, e.g. Combat, whose loading ends the process).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ale_py import Action, ALEInterface, LoggerMode, roms
from ale_py.registration import rom_id_to_name

from benchbase import UserError, unknown_name

#: (random policy, human) scores of the Atari-57 table (no-op starts; Mnih et al. 2015, with the
#: human scores of Wang et al. 2016 and Badia et al. 2020 for the games the first table lacked).
#: They carry over as facts; they normalise the raw game scores of single-game families.
REFERENCE_SCORES: dict[str, tuple[float, float]] = {
    "Alien": (227.8, 7127.7),
    "Amidar": (5.8, 1719.5),
    "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3),
    "Asteroids": (719.1, 47388.7),
    "Atlantis": (12850.0, 29028.1),
    "BankHeist": (14.2, 753.1),
    "BattleZone": (2360.0, 37187.5),
    "BeamRider": (363.9, 16926.5),
    "Berzerk": (123.7, 2630.4),
    "Bowling": (23.1, 160.7),
    "Boxing": (0.1, 12.1),
    "Breakout": (1.7, 30.5),
    "Centipede": (2090.9, 12017.0),
    "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4),
    "Defender": (2874.5, 18688.9),
    "DemonAttack": (152.1, 1971.0),
    "DoubleDunk": (-18.6, -16.4),
    "Enduro": (0.0, 860.5),
    "FishingDerby": (-91.7, -38.7),
    "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7),
    "Gopher": (257.6, 2412.5),
    "Gravitar": (173.0, 3351.4),
    "Hero": (1027.0, 30826.4),
    "IceHockey": (-11.2, 0.9),
    "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0),
    "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3),
    "MontezumaRevenge": (0.0, 4753.3),
    "MsPacman": (307.3, 6951.6),
    "NameThisGame": (2292.3, 8049.0),
    "Phoenix": (761.4, 7242.6),
    "Pitfall": (-229.4, 6463.7),
    "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0),
    "Riverraid": (1338.5, 17118.0),
    "RoadRunner": (11.5, 7845.0),
    "Robotank": (2.2, 11.9),
    "Seaquest": (68.4, 42054.7),
    "Skiing": (-17098.1, -4336.9),
    "Solaris": (1236.3, 12326.7),
    "SpaceInvaders": (148.0, 1668.7),
    "StarGunner": (664.0, 10250.0),
    "Surround": (-10.0, 6.5),
    "Tennis": (-23.8, -8.3),
    "TimePilot": (3568.0, 5229.1),
    "Tutankham": (11.4, 167.6),
    "UpNDown": (533.4, 11693.2),
    "Venture": (0.0, 1187.5),
    "VideoPinball": (0.0, 17667.9),
    "WizardOfWor": (563.5, 4756.5),
    "YarsRevenge": (3092.9, 54576.9),
    "Zaxxon": (32.5, 9173.3),
}

FULL_ACTION_COUNT = 18  # ALE's full action set: every game accepts all of them


@dataclass(frozen=True)
class GameInfo:
    """What a family needs to know about one ROM."""

    rom: str  # ALE's ROM id, "space_invaders"
    name: str  # the Gymnasium name, "SpaceInvaders"
    index: int  # position in `supported_games()`, recorded as a task parameter
    modes: tuple[int, ...]
    difficulties: tuple[int, ...]
    default_mode: int  # what the game runs unless told otherwise (the NoFrameskip-v4 ids' mode)
    default_difficulty: int
    minimal_actions: tuple[int, ...]  # ALE action ids of the game's minimal action set
    #: The game waits for FIRE to start (its action meanings begin NOOP, FIRE, …).
    fire_on_reset: bool


def quiet_ale() -> ALEInterface:
    """An ALEInterface that logs errors only (ALE prints its banner and settings otherwise)."""
    ALEInterface.setLoggerMode(LoggerMode.Error)
    return ALEInterface()


@functools.cache
def supported_games() -> tuple[str, ...]:
    """ROM ids of every shipped ROM that ALE can load (sorted)."""
    return tuple(sorted(g for g in roms.get_all_rom_ids() if ALEInterface.isSupportedROM(roms.get_rom_path(g))))


@functools.cache
def _names() -> dict[str, str]:
    """Lower-cased PascalCase names and ROM ids -> ROM id."""
    table = {}
    for rom in supported_games():
        table[rom] = rom
        table[rom_id_to_name(rom).lower()] = rom
    return table


def find_game(text: str) -> str | None:
    """The ROM id that `text` names ("SpaceInvaders", "space_invaders"), or None."""
    return _names().get(text.strip().lower())


def require_game(text: str) -> str:
    """The ROM id that `text` names; a one-line UserError with a close match otherwise."""
    rom = find_game(text)
    if rom is None:
        raise unknown_name("Atari game", text.strip(), [rom_id_to_name(g) for g in supported_games()])
    return rom


@functools.cache
def game_info(rom: str) -> GameInfo:
    """Modes, difficulties and action set of `rom` (loads the ROM once per process)."""
    if rom not in supported_games():
        raise UserError(f'"{rom}" is not a ROM that ALE supports')
    ale = quiet_ale()
    ale.loadROM(roms.get_rom_path(rom))
    minimal = tuple(int(a.value) for a in ale.getMinimalActionSet())
    state = ale.cloneState()
    return GameInfo(
        rom=rom,
        name=rom_id_to_name(rom),
        index=supported_games().index(rom),
        modes=tuple(int(m) for m in ale.getAvailableModes()),
        difficulties=tuple(int(d) for d in ale.getAvailableDifficulties()),
        default_mode=int(state.getCurrentMode()),
        default_difficulty=int(state.getDifficulty()),
        minimal_actions=minimal,
        fire_on_reset=len(minimal) >= 3 and minimal[1] == Action.FIRE.value,
    )


def reference_scores(rom: str) -> tuple[float, float] | None:
    """(random, human) scores of the game, where the Atari-57 table has it."""
    return REFERENCE_SCORES.get(rom_id_to_name(rom))
