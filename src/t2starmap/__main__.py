"""``python -m t2starmap`` runs the BIDS-App."""

from t2starmap.entry import run

run()
