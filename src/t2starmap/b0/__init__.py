"""The field-gradient (through-slice) correction and the slice profiles it needs."""
