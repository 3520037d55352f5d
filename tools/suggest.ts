/** "Did you mean ...?" for a mistyped command, flag or config key: the node's own (node/util.ts), for dataset names. */
export { nearest } from '../node/util.ts'
