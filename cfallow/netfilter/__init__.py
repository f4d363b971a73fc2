"""The host's netfilter state read once (nft JSON, save text, x_tables, NAT) and a packet's path."""
