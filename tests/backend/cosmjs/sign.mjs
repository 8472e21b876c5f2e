// ADR-036 signArbitrary with cosmjs, exactly as Keplr builds it (makeADR36AminoSignDoc):
// one sign/MsgSignData {signer, data: base64(message)}, empty fee, chain id "", account 0.
// Usage: node sign.mjs <private key hex> <prefix>   (the message is read from stdin)
// Prints {"address", "pub_key", "signature"} as JSON.
import { Secp256k1Wallet, makeSignDoc } from "@cosmjs/amino";
import { fromHex, toBase64, toUtf8 } from "@cosmjs/encoding";

const [keyHex, prefix] = process.argv.slice(2);
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const message = Buffer.concat(chunks).toString("utf8");

const wallet = await Secp256k1Wallet.fromKey(fromHex(keyHex), prefix);
const [{ address }] = await wallet.getAccounts();
const msg = { type: "sign/MsgSignData", value: { signer: address, data: toBase64(toUtf8(message)) } };
const doc = makeSignDoc([msg], { gas: "0", amount: [] }, "", "", 0, 0);
const { signature } = await wallet.signAmino(address, doc);
process.stdout.write(JSON.stringify({ address, ...signature }));
