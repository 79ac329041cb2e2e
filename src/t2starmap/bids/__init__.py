"""Every file read or written: layout, echo sets, NIfTI, output names and sidecars, records,
publication, validation."""
