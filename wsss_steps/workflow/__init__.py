"""What the Snakefile runs in snakemake itself (no step imports it): config (the config checks),
startup (the run's configs read and checked, the start-up checks of the datasets), options (the
steps' command-line options from config sections), targets (the stages, entry names and target
files of a run)."""
