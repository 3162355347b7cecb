"""Container images of this project, built offline: base image, names, podman flags, build."""
