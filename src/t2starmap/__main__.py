"""``python -m t2starmap`` runs the BIDS-App."""

from t2starmap.cli.entry import run

run()
