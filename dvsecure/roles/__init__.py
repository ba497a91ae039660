"""The consortium's roles as long-running commands, each on its own host: the
computing parties and the dealer (`serve`), the coordinator (`coordinator`), the
sources (`source`); their TOML configs (`config`) and what they publish to each
other (`published`)."""
