"""Networks. Each recipe builds its own (recipes/<name>.py); the modules here hold only the
layers, so a network can be read, tested and reused apart from how it is trained."""
