//! Socket address families by name, for `egress.families`, the kernel's
//! family set and the reports that list each family's state.

use agent_common::identity::DEFAULT_FAMILIES;

/// `AF_PACKET`: never allowed, whatever the policy says.
pub const AF_PACKET: u32 = 17;

/// Every family Linux defines (`AF_*`, as of 6.18), by the name policies use.
pub const FAMILIES: [(&str, u32); 45] = [
    ("unix", 1),
    ("inet", 2),
    ("ax25", 3),
    ("ipx", 4),
    ("appletalk", 5),
    ("netrom", 6),
    ("bridge", 7),
    ("atmpvc", 8),
    ("x25", 9),
    ("inet6", 10),
    ("rose", 11),
    ("decnet", 12),
    ("netbeui", 13),
    ("security", 14),
    ("key", 15),
    ("netlink", 16),
    ("packet", 17),
    ("ash", 18),
    ("econet", 19),
    ("atmsvc", 20),
    ("rds", 21),
    ("sna", 22),
    ("irda", 23),
    ("pppox", 24),
    ("wanpipe", 25),
    ("llc", 26),
    ("ib", 27),
    ("mpls", 28),
    ("can", 29),
    ("tipc", 30),
    ("bluetooth", 31),
    ("iucv", 32),
    ("rxrpc", 33),
    ("isdn", 34),
    ("phonet", 35),
    ("ieee802154", 36),
    ("caif", 37),
    ("alg", 38),
    ("nfc", 39),
    ("vsock", 40),
    ("kcm", 41),
    ("qipcrtr", 42),
    ("smc", 43),
    ("xdp", 44),
    ("mctp", 45),
];

/// The family's number, from its policy name.
pub fn number(name: &str) -> Option<u32> {
    FAMILIES.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The family's policy name, or its number as text for one Baton does not
/// know.
pub fn name(family: u32) -> String {
    FAMILIES
        .iter()
        .find(|(_, f)| *f == family)
        .map_or_else(|| family.to_string(), |(n, _)| (*n).to_string())
}

/// Names of the families in `set`, in number order.
pub fn names(set: u64) -> Vec<&'static str> {
    FAMILIES
        .iter()
        .filter(|(_, f)| set & (1 << f) != 0)
        .map(|(n, _)| *n)
        .collect()
}

/// Names of the families every agent may create.
pub fn default_names() -> Vec<&'static str> {
    names(DEFAULT_FAMILIES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_agree() {
        assert_eq!(number("vsock"), Some(40));
        assert_eq!(name(17), "packet");
        assert_eq!(name(99), "99");
        assert_eq!(default_names(), ["unix", "inet", "inet6", "netlink"]);
        let mut seen = std::collections::BTreeSet::new();
        for (n, f) in FAMILIES {
            assert!(seen.insert(f), "{n} listed twice");
            assert_eq!(number(n), Some(f));
        }
    }
}
