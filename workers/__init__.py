"""camstream's worker processes: pull frames, decode them with OpenCV, run a processor."""
