import type { Command } from "./common.ts"; export const command: Command = { usage: "mesh demo", summary: "three sites on this machine protecting each other", async run() { return 1 } }
