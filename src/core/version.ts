/** Recorded on every run as `engine_version`; a test keeps it equal to package.json's version. */
export const VERSION = '0.1.0';
export const ENGINE_VERSION = `cairn/${VERSION}`;
