"""What plugins may use: hookspecs, component contracts, replay protocols, typed parameters and the
plugin manager. `import benchbase` re-exports the public part."""
