"""DICOM -> BIDS conversion: ``t2starmap convert DICOM_DIR BIDS_DIR --participant-label L``.

ME-GRE goes to ``anat/``, multi-echo EPI (BOLD) to ``func/``, dual-echo field maps to ``fmap/``.
:mod:`series` decides from headers alone what each series is (pure), :mod:`plan` pairs the
series into acquisitions with their BIDS entities (pure), :mod:`scan` reads the headers,
:mod:`dcm2niix` runs the converter, :mod:`outputs` and :mod:`bids` name and clean the results,
:mod:`workflow` puts it together; the command line is :mod:`t2starmap.cli.convert`.
"""
