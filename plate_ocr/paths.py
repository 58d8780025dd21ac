"""The checkout's own folders (configs, fonts, runs...): paths beside the plate_ocr package."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder of plate_ocr/


def project_path(*parts: str) -> str:
    return os.path.join(ROOT, *parts)
