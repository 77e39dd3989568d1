"""The API front-ends: one request parser and one wire encoder per API."""
