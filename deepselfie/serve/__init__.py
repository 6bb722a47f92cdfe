"""The web page that scores one selfie, and its JSON API (server.py, page.html)."""
