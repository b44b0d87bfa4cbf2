"""Peers' file formats: what a circuit and its scores look like to other tools.

- :mod:`.eap_ig`: hannamw/EAP-IG's and MIB's graph JSON (node and edge names, scores, ``in_graph``).
"""
