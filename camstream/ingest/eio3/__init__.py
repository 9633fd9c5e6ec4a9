"""Engine.IO 3 / Socket.IO protocol 4: the Android app's protocol revision, served beside
python-socketio on the same port."""
