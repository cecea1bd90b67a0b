"""The Django project package (named so that it never shadows the stdlib `platform`)."""
