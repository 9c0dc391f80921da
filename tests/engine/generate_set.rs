//! `generate-set`: shards of a plan make exactly the set one job makes, an interrupted set
//! resumes with only the missing images, and each image is the one `generate` makes.

use std::path::Path;

use crate::common::cli;
use crate::parity::tempdir;

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn files(d: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = walk(d)
        .into_iter()
        .map(|p| (p.strip_prefix(d).unwrap().display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

fn walk(d: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn shards_make_the_set_one_job_makes_and_an_interrupted_set_resumes() {
    let dir = tempdir("generate-set");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let plan = [
        "generate-set",
        "--prompt",
        "a red circle left of a blue square",
        "--seeds",
        "3..5",
        "--steps",
        "3",
        "--guidance",
        "1,4",
        "-q",
    ];
    let one = dir.join("one");
    ok(cli(&[&plan[..], &["--out", &s(&one)]].concat()));
    let sharded = dir.join("sharded");
    for i in 1..=4 {
        let shard = format!("{i}/4");
        ok(cli(&[&plan[..], &["--shard", &shard, "--out", &s(&sharded)]].concat()));
    }
    let a = files(&one);
    assert_eq!(a.len(), 1 + 2 * (3 + 1), "{:?}", a.iter().map(|f| &f.0).collect::<Vec<_>>());
    assert_eq!(a, files(&sharded), "shards differ from one job");

    // Lose two images (an interrupted shard): the rerun makes exactly those again.
    std::fs::remove_file(one.join("default-s3-w4/000001.png")).unwrap();
    std::fs::remove_file(one.join("default-s3-w1/000002.png")).unwrap();
    let out = ok(cli(&[&plan[..], &["--out", &s(&one)]].concat()));
    assert!(out.contains("2 images made, 4 already there"), "{out}");
    assert_eq!(a, files(&one));

    // Image 1 of the w = 4 cell is seed 4's image, as `generate` makes it.
    let run = dir.join("run");
    ok(cli(&[
        "generate",
        "--prompt",
        "a red circle left of a blue square",
        "--seed",
        "4",
        "--steps",
        "3",
        "--guidance",
        "4",
        "--out",
        &s(&run),
    ]));
    let want = image::open(run.join("image.png")).unwrap().to_rgb8();
    let got = image::open(one.join("default-s3-w4/000001.png")).unwrap().to_rgb8();
    assert_eq!(want.as_raw(), got.as_raw());

    // Another plan into the same folder is refused; a bad shard exits before writing.
    let o = cli(&[
        "generate-set",
        "--prompt",
        "a green circle",
        "--seeds",
        "3..5",
        "--steps",
        "3",
        "--out",
        &s(&one),
    ]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("holds another image set"));
    let fresh = dir.join("fresh");
    let o = cli(&[&plan[..], &["--shard", "5/4", "--out", &s(&fresh)]].concat());
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--shard"));
    assert!(!fresh.exists());
}
