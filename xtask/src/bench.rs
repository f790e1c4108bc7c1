pub fn run(_a: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("todo")
}
pub fn client(_a: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("todo")
}
