"""Test-support code: synthetic inputs that must not ship in the installed package."""
