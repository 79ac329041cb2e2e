"""DICOM -> BIDS MEGRE conversion: ``t2starmap convert DICOM_DIR BIDS_DIR --participant-label L``.

:mod:`series` decides from headers alone which series are multi-echo gradient echo (pure),
:mod:`scan` reads the headers, :mod:`dcm2niix` runs the converter, :mod:`bids` names and
cleans the results, :mod:`workflow` puts it together and :mod:`cli` is the command line.
"""
