"""Engine.IO 4 / Socket.IO protocol 5: python-socketio and python-engineio, hardened."""
