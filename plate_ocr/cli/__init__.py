"""The commands, the only absl code. In: flags and flagfiles (bin/<command>, `python -m plate_ocr
<command>`). Out: config dataclasses and plain arguments for data/, training/, serving/ and
benchmark/, and bad input as one line on stderr with exit status 2. No library module imports it."""
