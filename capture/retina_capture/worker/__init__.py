"""The capture node worker (``retina-capture``): what a capture Job runs on a node.

``settings`` is the contract with the Job builder; ``capture`` runs tcpdump, ``metadata``
collects the node's network state, ``pack`` builds the tarball and ``cli`` ties them together.
"""
