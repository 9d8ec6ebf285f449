"""Machinery: what running the course needs and the lesson does not teach.

Checkpoint folders, whole-or-nothing files and the course cache, Ctrl-C and SIGTERM, device and
precision choice, the CPU speed-ups, and Hugging Face weights in and out. These modules may import
the lesson files; the lesson files never import them.
"""
