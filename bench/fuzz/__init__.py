"""Fuzzing (issue 12): the OpenAPI pass over HTTP and the atheris harnesses (bench/README.md
"Fuzzing")."""
