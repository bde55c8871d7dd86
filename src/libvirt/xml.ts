// One XML parser configuration for everything libvirt says. Raw parser output never leaves src/libvirt/.
import { createRequire } from 'node:module';
import type { XMLBuilder, XMLParser } from 'fast-xml-parser';

// Elements that may appear once or many times: always arrays, so one element is not a special case.
const LISTS = new Set(['disk', 'seclabel', 'channel']);

// Loaded on first use, and through its one-file CommonJS build: its ES module build is dozens
// of files, ~70 ms of every vircpt start even when no XML is read.
let fxp: typeof import('fast-xml-parser') | undefined;
const load = () => (fxp ??= createRequire(import.meta.url)('fast-xml-parser') as typeof import('fast-xml-parser'));
let parser: XMLParser | undefined;
let builder: XMLBuilder | undefined;

function getParser(): XMLParser {
  return (parser ??= new (load().XMLParser)({
    ignoreAttributes: false,
    attributeNamePrefix: '@',
    parseTagValue: false,
    parseAttributeValue: false,
    trimValues: true,
    isArray: (name) => LISTS.has(name),
  }));
}

function getBuilder(): XMLBuilder {
  return (builder ??= new (load().XMLBuilder)({
    ignoreAttributes: false,
    attributeNamePrefix: '@',
    format: true,
    suppressEmptyNode: true,
  }));
}

export type XmlNode = Record<string, unknown>;

export function parseXml(text: string): XmlNode {
  return getParser().parse(text) as XmlNode;
}

export function buildXml(doc: XmlNode): string {
  return getBuilder().build(doc) as string;
}

/** A child element (or undefined), tolerating a scalar where an element was expected. */
export function child(node: unknown, name: string): XmlNode | undefined {
  if (node === null || typeof node !== 'object') return undefined;
  const v = (node as XmlNode)[name];
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as XmlNode) : undefined;
}

export function children(node: unknown, name: string): XmlNode[] {
  if (node === null || typeof node !== 'object') return [];
  const v = (node as XmlNode)[name];
  if (Array.isArray(v)) return v.filter((x): x is XmlNode => typeof x === 'object' && x !== null);
  return v !== null && typeof v === 'object' ? [v as XmlNode] : [];
}

export function attr(node: unknown, name: string): string | undefined {
  const v = node && typeof node === 'object' ? (node as XmlNode)[`@${name}`] : undefined;
  return typeof v === 'string' ? v : undefined;
}

/** An element's text, whether it has attributes or not. */
export function text(node: unknown, name: string): string | undefined {
  if (node === null || typeof node !== 'object') return undefined;
  const v = (node as XmlNode)[name];
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as XmlNode)['#text'] === 'string') {
    return (v as XmlNode)['#text'] as string;
  }
  return undefined;
}
