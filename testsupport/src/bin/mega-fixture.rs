//! Builds the test fixture repository at DIR (for scripts: the demo, the systemd test) and
//! prints its newest commit.

fn main() -> anyhow::Result<()> {
    let Some(dir) = std::env::args_os().nth(1) else {
        anyhow::bail!("usage: mega-fixture DIR");
    };
    let fixture = megafs_testsupport::fixture::build(std::path::Path::new(&dir))?;
    println!("{}", fixture.head);
    Ok(())
}
