"""plate_ocr: read 5-digit number plates with a CRNN trained on plates it renders itself."""
