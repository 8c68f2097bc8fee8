//! The resolver on a cgroup tree made of plain directories: the names runtimes, the kubelet and
//! systemd give cgroups, prefixes, ambiguity, and where a workload is per hierarchy.

use std::{fs, path::Path};

use super::*;

/// A v1 host with three hierarchies under `root`, and the cgroups `paths` in each one.
fn v1_tree(root: &Path, paths: &[&str]) -> Workloads {
    let mut mountinfo = String::new();
    for (n, name) in ["cpu,cpuacct", "freezer", "systemd"].iter().enumerate() {
        let mount = root.join(name);
        for path in paths {
            fs::create_dir_all(mount.join(path)).unwrap();
        }
        let option = if *name == "systemd" {
            "name=systemd"
        } else {
            name
        };
        mountinfo.push_str(&format!(
            "{} 1 0:{n} / {} rw - cgroup cgroup rw,{option}\n",
            30 + n,
            mount.display()
        ));
    }
    Workloads::with(Hierarchies::from_mountinfo(&mountinfo), "faultline")
}

fn id(digit: char) -> String {
    std::iter::repeat_n(digit, 64).collect()
}

#[test]
fn a_container_is_found_by_a_unique_prefix_in_every_hierarchy() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        format!("3a{}", &id('1')[2..]),
        format!("3b{}", &id('2')[2..]),
    );
    let w = v1_tree(
        dir.path(),
        &[
            &format!("system.slice/docker-{a}.scope"),
            &format!("system.slice/crio-conmon-{b}.scope"),
            &format!("kubepods.slice/kubepods-burstable.slice/x.slice/cri-containerd-{b}.scope"),
        ],
    );
    let found = w.find(Query::Container("3A1")).unwrap();
    assert_eq!(found.what, format!("container {}", &a[..12]));
    assert_eq!(found.placements.len(), 3, "{found:?}");
    assert!(found
        .placements
        .iter()
        .all(|p| p.path == format!("/system.slice/docker-{a}.scope")));
    assert_eq!(
        found.placement("freezer").map(|p| p.hierarchy.as_str()),
        Some("freezer")
    );
    assert_eq!(
        found.placement("cpuacct").unwrap().dir,
        dir.path()
            .join(format!("cpu,cpuacct/system.slice/docker-{a}.scope"))
    );
    assert!(found
        .where_()
        .contains("(cpu,cpuacct, freezer, name=systemd)"));
    // The conmon scope of b is not b; its container scope is.
    let b_found = w.find(Query::Container("3b")).unwrap();
    assert!(b_found.placements[0]
        .path
        .ends_with(&format!("cri-containerd-{b}.scope")));

    let WorkloadError::Ambiguous(text) = w.find(Query::Container("3")).unwrap_err() else {
        panic!("not ambiguous")
    };
    assert!(text.contains(&a) && text.contains(&b), "{text}");
    let WorkloadError::NotFound(text) = w.find(Query::Container("ff")).unwrap_err() else {
        panic!("found")
    };
    assert!(text.contains("docker-<id>.scope"), "{text}");
    assert!(matches!(
        w.find(Query::Container("nginx")),
        Err(WorkloadError::Malformed(_))
    ));
}

#[test]
fn cgroupfs_driver_containers_and_pods_of_both_drivers_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let uid = "0b5e2c4a-9d1f-4e1e-8a55-3c1f2b7d9e00";
    let systemd_uid = "7c0ffee0-9d1f-4e1e-8a55-3c1f2b7d9e00";
    let w = v1_tree(
        dir.path(),
        &[
            &format!("docker/{}", id('c')),
            &format!("kubepods/burstable/pod{uid}/{}", id('d')),
            &format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
                systemd_uid.replace('-', "_")
            ),
        ],
    );
    assert_eq!(
        w.find(Query::Container("ccc")).unwrap().placements[0].path,
        format!("/docker/{}", id('c'))
    );
    let pod = w.find(Query::Pod("0b5e")).unwrap();
    assert_eq!(pod.what, format!("pod {uid}"));
    assert_eq!(
        pod.placements[0].path,
        format!("/kubepods/burstable/pod{uid}")
    );
    // Given with the systemd driver's spelling, or the UID's own.
    let pod = w.find(Query::Pod(systemd_uid)).unwrap();
    assert!(pod.placements[0].path.ends_with(".slice"));
    assert!(w.find(Query::Pod("7c0ffee0_9d1f")).is_ok());
    assert!(matches!(
        w.find(Query::Pod("nope")),
        Err(WorkloadError::Malformed(_))
    ));
}

#[test]
fn a_unit_without_a_suffix_is_a_service_and_two_paths_are_ambiguous() {
    let dir = tempfile::tempdir().unwrap();
    let w = v1_tree(
        dir.path(),
        &[
            "system.slice/nginx.service",
            "system.slice/app.service",
            "user.slice/user-1000.slice/user@1000.service/app.slice/app.service",
        ],
    );
    let nginx = w.find(Query::Unit("nginx")).unwrap();
    assert_eq!(nginx.what, "unit nginx.service");
    assert_eq!(nginx.placements[0].path, "/system.slice/nginx.service");
    assert!(w.find(Query::Unit("nginx.service")).is_ok());
    let WorkloadError::Ambiguous(text) = w.find(Query::Unit("app")).unwrap_err() else {
        panic!("not ambiguous")
    };
    assert!(text.contains("/system.slice/app.service"), "{text}");
    assert!(text.contains("--cgroup"), "{text}");
    let WorkloadError::NotFound(text) = w.find(Query::Unit("redis")).unwrap_err() else {
        panic!("found")
    };
    assert!(
        text.contains("redis.service") && text.contains("running"),
        "{text}"
    );
    assert!(w.find(Query::Unit("a/b")).is_err());
    assert_eq!(unit_name("session-3.scope").unwrap(), "session-3.scope");
    assert_eq!(unit_name("user.slice").unwrap(), "user.slice");
    assert_eq!(unit_name("foo.bar").unwrap(), "foo.bar.service");
}

#[test]
fn a_cgroup_path_is_where_its_directories_are_and_never_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let w = v1_tree(dir.path(), &["a/b"]);
    fs::remove_dir(dir.path().join("freezer/a/b")).unwrap();
    let found = w.find(Query::Cgroup("a/b/")).unwrap();
    assert_eq!(found.what, "cgroup /a/b");
    let names: Vec<&str> = found
        .placements
        .iter()
        .map(|p| p.hierarchy.as_str())
        .collect();
    assert_eq!(names, ["cpu,cpuacct", "name=systemd"]);
    assert!(matches!(
        w.find(Query::Cgroup("/")),
        Err(WorkloadError::Malformed(_))
    ));
    assert!(matches!(
        w.find(Query::Cgroup("a/../b")),
        Err(WorkloadError::Malformed(_))
    ));
    assert!(matches!(
        w.find(Query::Cgroup("nope")),
        Err(WorkloadError::NotFound(_))
    ));
}

#[test]
fn a_removed_cgroup_ends_the_workload_and_a_resolved_one_is_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let w = v1_tree(dir.path(), &["a"]);
    let found = w.resolve("f1", Query::Cgroup("a")).unwrap();
    assert_eq!(w.resolved("f1"), Some(found));
    assert_eq!(w.gone("f1"), None, "an empty cgroup named by path is there");
    for h in ["cpu,cpuacct", "freezer", "systemd"] {
        fs::remove_dir(dir.path().join(h).join("a")).unwrap();
    }
    assert!(w.gone("f1").unwrap().contains("was removed"));
    w.forget("f1");
    assert_eq!(w.resolved("f1"), None);
    assert_eq!(w.gone("f1"), None);
}

#[test]
fn processes_are_found_by_pid_with_their_start_time() {
    let w = Workloads::new("faultline");
    let me = std::process::id();
    let found = w.find(Query::Pids(&[me])).unwrap();
    assert_eq!(found.what, format!("pid {me}"));
    assert_eq!(w.procs(&found), vec![me]);
    let mut stale = found.clone();
    stale.pids = Some(vec![(me, 1)]);
    assert!(
        w.procs(&stale).is_empty(),
        "a reused pid is not the process"
    );
    assert!(matches!(
        w.find(Query::Pids(&[u32::MAX - 1])),
        Err(WorkloadError::NotFound(_))
    ));
}
