"""The backend's rules, free of HTTP: routers call these with a session and settings."""
