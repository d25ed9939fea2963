// Loaded into every Node process through NODE_OPTIONS=--require. Node before 22.21 (and 23.x,
// 24.0-24.4) ignores HTTP(S)_PROXY; this sends the http and https modules' connections and
// fetch() through the proxy, as CONNECT tunnels, with Node's built-in modules only:
// - http(s).Agent.prototype.createConnection opens a tunnel when the proxy variables apply, and
// the https Agent runs TLS over it as usual, so custom Agents (keepAlive, ...) work too;
// - fetch() is undici, bundled in Node and not importable: its default global dispatcher is an
// Agent created the first time undici loads (the first fetch(), or the first use of Request,
// Headers, ...). A getter on the global dispatcher symbol notices that moment and puts an Agent
// of the same class, with a `connect` function that tunnels, in place of the default. Nothing
// is loaded at startup, and a dispatcher the program sets itself is left alone.
// Where Node does all this itself (NODE_USE_ENV_PROXY=1 on 22.21+ and 24.5+) it does nothing.
'use strict';
// Written by authproxy (`authproxy env`, `authproxy exec`); loaded with NODE_OPTIONS=--require.
// Sends http/https and fetch() through HTTPS_PROXY / HTTP_PROXY on Node versions that ignore them.
(() => {
  const MARK = Symbol.for('authproxy.node-proxy');
  if (globalThis[MARK]) return;
  globalThis[MARK] = true;
  const [major, minor] = process.versions.node.split('.').map(Number);
  const builtin = major >= 25 || (major === 24 && minor >= 5) || (major === 22 && minor >= 21);
  if (builtin && process.env.NODE_USE_ENV_PROXY === '1') return;

  const net = require('net');
  const tls = require('tls');
  const http = require('http');
  const https = require('https');

  const bare = (host) =>
    String(host || '').toLowerCase().replace(/^\[(.*)\]$/, '$1').replace(/\.$/, '');
  const once = (fn) => {
    let called = false;
    return (...args) => {
      if (!called) {
        called = true;
        fn(...args);
      }
    };
  };

  function bypassed(host, port) {
    const list = process.env.no_proxy ?? process.env.NO_PROXY ?? '';
    for (const item of list.split(/[\s,]+/)) {
      if (!item) continue;
      if (item === '*') return true;
      let name = item.toLowerCase();
      let itemPort = 0;
      const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(name);
      if (bracketed) {
        name = bracketed[1];
        itemPort = Number(bracketed[2] || 0);
      } else if (name.split(':').length === 2) {
        itemPort = Number(name.split(':')[1]) || 0;
        name = name.split(':')[0];
      }
      if (itemPort && itemPort !== port) continue;
      name = name.replace(/^\*?\./, '').replace(/\.$/, '');
      if (host === name || (!net.isIP(host) && host.endsWith(`.${name}`))) return true;
    }
    return false;
  }

  // The proxy URL for a connection to host:port, or null for a direct one.
  function proxyFor(protocol, host, port) {
    const raw = protocol === 'https:'
      ? process.env.https_proxy || process.env.HTTPS_PROXY
      : process.env.http_proxy || process.env.HTTP_PROXY;
    if (!raw) return null;
    let url;
    try {
      url = new URL(raw.includes('://') ? raw : `http://${raw}`);
    } catch {
      return null;
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') return null;
    const name = bare(host);
    port = Number(port);
    const proxyPort = Number(url.port) || (url.protocol === 'https:' ? 443 : 80);
    if (name === bare(url.hostname) && port === proxyPort) return null; // the proxy itself
    return bypassed(name, port) ? null : url;
  }

  // A socket to host:port through the proxy (HTTP CONNECT); callback(error, socket).
  function tunnel(proxy, host, port, callback) {
    const done = once(callback);
    const proxyHost = bare(proxy.hostname);
    const proxyPort = Number(proxy.port) || (proxy.protocol === 'https:' ? 443 : 80);
    const socket = proxy.protocol === 'https:'
      ? tls.connect({
        host: proxyHost,
        port: proxyPort,
        servername: net.isIP(proxyHost) ? undefined : proxyHost,
        ALPNProtocols: ['http/1.1'],
      })
      : net.connect({ host: proxyHost, port: proxyPort });
    const name = bare(host);
    const target = net.isIPv6(name) ? `[${name}]:${port}` : `${name}:${port}`;
    let request = `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n`;
    if (proxy.username || proxy.password) {
      const user = decodeURIComponent(proxy.username);
      const credentials = `${user}:${decodeURIComponent(proxy.password)}`;
      request += `Proxy-Authorization: Basic ${Buffer.from(credentials).toString('base64')}\r\n`;
    }
    socket.write(`${request}\r\n`);
    let head = Buffer.alloc(0);
    const cleanup = () => {
      socket.removeListener('readable', onReadable);
      socket.removeListener('error', onError);
      socket.removeListener('end', onEnd);
    };
    const fail = (error) => {
      cleanup();
      socket.destroy();
      done(Object.assign(error, { code: error.code || 'ERR_PROXY_TUNNEL' }));
    };
    const onError = (error) => fail(error);
    const where = `authproxy: proxy ${proxyHost}:${proxyPort}`;
    const onEnd = () => fail(new Error(`${where} closed the connection during CONNECT ${target}`));
    function onReadable() {
      let chunk;
      while ((chunk = socket.read()) !== null) {
        head = Buffer.concat([head, chunk]);
        const end = head.indexOf('\r\n\r\n');
        if (end === -1) {
          if (head.length > 65536) return fail(new Error('authproxy: oversized CONNECT response'));
          continue;
        }
        const statusLine = head.subarray(0, head.indexOf('\r\n')).toString('latin1');
        if (!/^HTTP\/1\.[01] 200(?: |$)/.test(statusLine)) {
          return fail(new Error(`${where} refused CONNECT ${target}: ${statusLine}`));
        }
        cleanup();
        const rest = head.subarray(end + 4);
        if (rest.length) socket.unshift(rest);
        return done(null, socket);
      }
    }
    socket.on('readable', onReadable);
    socket.on('error', onError);
    socket.on('end', onEnd);
  }

  // Where an Agent's connection to `options` goes: [proxy URL or null, host, port].
  function route(protocol, options, callback) {
    if (!options || typeof options !== 'object' || typeof callback !== 'function') return [null];
    if (options.socketPath) return [null];
    const host = options.host || options.hostname || 'localhost';
    const port = Number(options.port) || (protocol === 'https:' ? 443 : 80);
    return [proxyFor(protocol, host, port), host, port];
  }

  const httpsCreate = https.Agent.prototype.createConnection;
  https.Agent.prototype.createConnection = function createConnection(options, callback) {
    const [proxy, host, port] = route('https:', options, callback);
    if (!proxy) return httpsCreate.apply(this, arguments);
    tunnel(proxy, host, port, (error, socket) => {
      if (error) return callback(error);
      let secure;
      try {
        secure = httpsCreate.call(this, { ...options, socket });
      } catch (e) {
        socket.destroy();
        return callback(e);
      }
      return callback(null, secure);
    });
    return undefined;
  };

  const httpCreate = http.Agent.prototype.createConnection;
  http.Agent.prototype.createConnection = function createConnection(options, callback) {
    const [proxy, host, port] = route('http:', options, callback);
    if (!proxy) return httpCreate.apply(this, arguments);
    tunnel(proxy, host, port, callback);
    return undefined;
  };

  // undici's `connect` option: connect(options, callback(error, socket)).
  function connector(options, callback) {
    const done = once(callback);
    const secure = options.protocol === 'https:';
    const host = bare(options.hostname);
    const port = Number(options.port) || (secure ? 443 : 80);
    const onSocket = (error, socket) => {
      if (error) return done(error);
      if (!secure) return done(null, socket);
      const servername = options.servername || (net.isIP(host) ? undefined : host);
      const tlsSocket = tls.connect({ socket, host, servername, ALPNProtocols: ['http/1.1'] });
      tlsSocket.once('secureConnect', () => {
        tlsSocket.removeListener('error', done);
        done(null, tlsSocket);
      });
      tlsSocket.once('error', done);
      return undefined;
    };
    const proxy = proxyFor(options.protocol, host, port);
    if (proxy) return tunnel(proxy, host, port, onSocket);
    const socket = net.connect({ host, port });
    socket.once('connect', () => {
      socket.removeListener('error', done);
      onSocket(null, socket);
    });
    socket.once('error', done);
    return undefined;
  }

  const DISPATCHER = Symbol.for('undici.globalDispatcher.1');
  if (typeof globalThis.fetch === 'function' && !(DISPATCHER in globalThis)) {
    Object.defineProperty(globalThis, DISPATCHER, {
      configurable: true,
      enumerable: false,
      get() {
        // undici is loading and asks whether a dispatcher is set; it defines its default Agent
        // next. Let it, but as an Agent of the same class that connects through the proxy.
        delete globalThis[DISPATCHER];
        const define = Object.defineProperty;
        Object.defineProperty = function defineProperty(target, key, descriptor) {
          if (target === globalThis && key === DISPATCHER) {
            Object.defineProperty = define;
            const agent = descriptor && descriptor.value;
            const Agent = agent && typeof agent.dispatch === 'function' && agent.constructor;
            if (typeof Agent === 'function') {
              try {
                descriptor = { ...descriptor, value: new Agent({ connect: connector }) };
              } catch {
                // not an undici Agent after all: keep it
              }
            }
          }
          return define(target, key, descriptor);
        };
        return undefined;
      },
      set(value) {
        delete globalThis[DISPATCHER];
        globalThis[DISPATCHER] = value;
      },
    });
  }
})();
