#!/usr/bin/env python3
"""BIDS-App entry point: ``run.py BIDS_DIR OUTPUT_DIR {participant,group}``."""

from t2starmap.cli.entry import run

run()
