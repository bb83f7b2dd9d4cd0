"""Test doubles for runtimes that exist only on the device (e.g. ``sophon.sail``)."""
