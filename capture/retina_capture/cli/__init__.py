"""kubectl-retina: the kubectl plugin for captures."""
