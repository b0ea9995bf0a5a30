//! Egress by name: the DNS proxy and the addresses it learns.
