//! `sign`: sign a text with the identity key, as the operator guide's claim step needs.

use super::Output;

/// Arguments of `sign`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Id of the node whose identity key signs.
    #[arg(long, env = "NYM_MIXNODE_ID")]
    pub id: String,
    /// The text to sign, e.g. "@telegram_handle punk1wallet...".
    #[arg(long)]
    pub text: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

/// The wallet of a text of the guide's form `@handle wallet`, if it has that form.
pub fn claim_wallet(text: &str) -> Option<&str> {
    let mut words = text.split_whitespace();
    let handle = words.next()?;
    let wallet = words.next()?;
    if words.next().is_some() || !handle.starts_with('@') || handle.len() < 2 {
        return None;
    }
    Some(wallet)
}

pub(super) fn execute(args: Args) -> anyhow::Result<()> {
    let (_config, keys) = super::load_node(&args.id)?;
    let signature = keys.sign_base58(args.text.as_bytes());
    match args.output {
        Output::Json => {
            let out = serde_json::json!({
                "text": args.text,
                "signature": signature,
                "identity_key": keys.identity_base58(),
            });
            println!("{out}");
        }
        Output::Text => {
            print!("{}", super::banner());
            println!(
                "Signing the text {:?} using your mixnode's Ed25519 identity key...",
                args.text
            );
            println!();
            println!("Signature is: {signature}");
            if let Some(wallet) = claim_wallet(&args.text) {
                println!();
                println!("You can claim your mixnode in Telegram by talking to our bot. To do so:");
                println!();
                println!("* go to the 'https://t.me/nympunkbot' channel");
                println!("* copy the following line of text, and paste it into the channel");
                println!();
                println!("/transfer {wallet} {signature}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::claim_wallet;

    #[test]
    fn claim_form() {
        assert_eq!(claim_wallet("@winston punk1abc"), Some("punk1abc"));
        assert_eq!(claim_wallet("winston punk1abc"), None);
        assert_eq!(claim_wallet("@winston"), None);
        assert_eq!(claim_wallet("@winston a b"), None);
    }
}
