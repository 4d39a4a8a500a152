// voxgate: the globals a `code` step's script sees, besides `args` (a copy of the session's
// variables). Runs once per script, before it, in the script's own fresh context.
(function (native) {
  "use strict";
  var out = { session: {}, messages: [], nextDialogstate: null, sent: false };
  function Builder() {
    if (!(this instanceof Builder)) return new Builder();
    this._session = {};
    this._messages = [];
    this._next = undefined;
  }
  Builder.prototype.setSessionVariable = function (namespace, data) {
    if (typeof namespace !== "string" || namespace === "") throw new TypeError("setSessionVariable: the name must be a non-empty string");
    this._session[namespace] = data === undefined ? null : data;
    return this;
  };
  Builder.prototype.addSessionVariable = Builder.prototype.setSessionVariable;
  Builder.prototype.addMessage = function (message) {
    this._messages.push(String(message));
    return this;
  };
  Builder.prototype.setNextDialogState = function (dialog) {
    this._next = dialog === undefined || dialog === null ? null : String(dialog);
    return this;
  };
  Builder.prototype.send = function () {
    var k;
    for (k in this._session) out.session[k] = this._session[k];
    for (k = 0; k < this._messages.length; k++) out.messages.push(this._messages[k]);
    if (this._next !== undefined) out.nextDialogstate = this._next;
    out.sent = true;
    this._session = {};
    this._messages = [];
    this._next = undefined;
    return this;
  };
  Object.defineProperty(globalThis, "ChatlayerResponseBuilder", { value: Builder });
  Object.defineProperty(globalThis, "__voxgate_result", { value: function () { return JSON.stringify(out); } });

  var logs = [];
  function log() {
    if (logs.length >= 50) return;
    var parts = [];
    for (var i = 0; i < arguments.length; i++) {
      var a = arguments[i];
      parts.push(typeof a === "string" ? a : JSON.stringify(a));
    }
    logs.push(parts.join(" ").slice(0, 1000));
  }
  globalThis.console = { log: log, info: log, warn: log, error: log, debug: log };
  Object.defineProperty(globalThis, "__voxgate_logs", { value: function () { return JSON.stringify(logs); } });

  // A small part of lodash, as Chatlayer's code action offers `_`.
  function path(p) {
    if (Array.isArray(p)) return p;
    return String(p).replace(/\[(\w+)\]/g, ".$1").split(".").filter(function (s) { return s !== ""; });
  }
  globalThis._ = {
    get: function (obj, p, dflt) {
      var cur = obj, keys = path(p);
      for (var i = 0; i < keys.length; i++) {
        if (cur === null || cur === undefined) return dflt;
        cur = cur[keys[i]];
      }
      return cur === undefined ? dflt : cur;
    },
    has: function (obj, p) {
      var cur = obj, keys = path(p);
      for (var i = 0; i < keys.length; i++) {
        if (cur === null || typeof cur !== "object" || !Object.prototype.hasOwnProperty.call(cur, keys[i])) return false;
        cur = cur[keys[i]];
      }
      return true;
    },
    set: function (obj, p, value) {
      var cur = obj, keys = path(p);
      for (var i = 0; i < keys.length - 1; i++) {
        if (cur[keys[i]] === null || typeof cur[keys[i]] !== "object") cur[keys[i]] = {};
        cur = cur[keys[i]];
      }
      if (keys.length) cur[keys[keys.length - 1]] = value;
      return obj;
    },
    isEmpty: function (v) {
      if (v === null || v === undefined) return true;
      if (typeof v === "string" || Array.isArray(v)) return v.length === 0;
      if (typeof v === "object") return Object.keys(v).length === 0;
      return true;
    },
  };

  if (native) {
    // fetch: the gateway does the request (allow-list, secrets, size cap, the step's deadline);
    // the script waits for it like any promise.
    globalThis.fetch = function (url, opts) {
      return new Promise(function (resolve, reject) {
        var r = JSON.parse(native(String(url), JSON.stringify(opts || {})));
        if (r.error) {
          var e = new Error(r.error.message);
          e.code = r.error.code;
          reject(e);
          return;
        }
        var headers = r.headers;
        resolve({
          status: r.status,
          ok: r.status >= 200 && r.status < 300,
          url: String(url),
          headers: {
            get: function (n) { var v = headers[String(n).toLowerCase()]; return v === undefined ? null : v; },
            has: function (n) { return headers[String(n).toLowerCase()] !== undefined; },
          },
          text: function () { return Promise.resolve(r.text); },
          json: function () {
            return new Promise(function (ok, fail) {
              try { ok(JSON.parse(r.text)); } catch (err) { fail(err); }
            });
          },
        });
      });
    };
  }
})(globalThis.__voxgate_fetch);
delete globalThis.__voxgate_fetch;
