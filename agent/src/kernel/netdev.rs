//! Network interfaces of the agent's own network namespace, looked up by name through the
//! kernel (not /sys/class/net, which shows the namespace of whoever mounted sysfs).

use crate::errors::InvalidSpec;

/// Linux's IFNAMSIZ less the terminating NUL.
const MAX_NAME: usize = 15;

/// The interface's index, or a refusal that names the `dev` field.
pub fn check_exists(name: &str) -> Result<u32, InvalidSpec> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || name.contains(['/', ':'])
        || name.chars().any(char::is_whitespace)
    {
        return Err(InvalidSpec::new(
            "dev",
            format!("{name:?} is not an interface name (1-{MAX_NAME} characters, no '/', ':' or spaces)"),
        ));
    }
    nix::net::if_::if_nametoindex(name).map_err(|_| {
        let known = names().join(", ");
        InvalidSpec::new(
            "dev",
            format!("no interface {name:?} in the agent's network namespace (it has: {known})"),
        )
    })
}

/// Names of the interfaces in this network namespace, for messages.
pub fn names() -> Vec<String> {
    let mut names: Vec<String> = nix::net::if_::if_nameindex()
        .map(|list| {
            list.iter()
                .map(|i| i.name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_exists_and_nonsense_does_not() {
        assert!(check_exists("lo").is_ok());
        let err = check_exists("nosuch0").unwrap_err();
        assert_eq!(err.field, "dev");
        assert!(err.reason.contains("lo"), "{}", err.reason);
        assert!(check_exists("a/b").is_err());
        assert!(check_exists("much-too-long-name0").is_err());
    }
}
