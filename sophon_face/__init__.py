"""sophon-face: a face-recognition daemon serving the Sophon v2 face HTTP API."""

__version__ = "0.1.0"
