#!/usr/bin/env node
// The detached helper a vircptfs instance leaves when it exits with exports it could not release
// (src/exports/release-helper.ts). One argument: its HelperArgs as JSON.
import { releaseWhenBack, type HelperArgs } from '../exports/release-helper.js';
import { Virsh } from '../libvirt/virsh.js';
import { createLogger } from '../log.js';

const args = JSON.parse(process.argv[2] ?? '{}') as HelperArgs;
const log = createLogger(args.log);
// One process per call (no shells): a shell would carry a dead connection across a restart.
const virsh = new Virsh({ uri: args.uri, timeoutMs: 15_000, log: log.child({ c: 'virsh' }) });
process.exitCode = (await releaseWhenBack(args, virsh, log)) ? 0 : 1;
