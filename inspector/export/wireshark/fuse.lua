-- The interpreter of the generated tables above (G): it knows how to read a field of each
-- kind and how a message picks its layers, never which fields or layers there are.
-- Field labels print values as `fusetrace show -v` does (flags A|B, S_IFREG|0644, -2 (ENOENT)).

local band, bnot = bit32.band, bit32.bnot
local fuse = Proto("fuse", "FUSE (fusetrace)")
local PF = {}        -- abbrev -> ProtoField
local fields = {}

local function field(abbrev, ctor, label, ...)
    if not PF[abbrev] then
        PF[abbrev] = ProtoField[ctor](abbrev, label, ...)
        fields[#fields + 1] = PF[abbrev]
    end
    return PF[abbrev]
end

-- layers with an int list fail whole when an item is cut (see decode_layer)
for _, layer in pairs(G.layers) do
    for _, op in ipairs(layer.ops) do
        if op.k == "intlist" then layer.whole = true end
    end
end

local INT_CTOR = {[1] = "uint8", [2] = "uint16", [4] = "uint32", [8] = "uint64"}
local SINT_CTOR = {[1] = "int8", [2] = "int16", [4] = "int32", [8] = "int64"}

-- one ProtoField per field of every layer: fuse.<layer>.<field>
for lid, layer in pairs(G.layers) do
    for _, op in ipairs(layer.ops) do
        local abbrev = "fuse." .. lid .. "." .. op.n
        op.abbrev = abbrev
        if op.k == "int" then
            local ctor = op.signed and SINT_CTOR[op.size] or INT_CTOR[op.size]
            field(abbrev, ctor, op.n, (op.rep == "hex" or op.rep == "flags") and base.HEX or base.DEC)
        elseif op.k == "intlist" then
            op.item.abbrev = abbrev
            field(abbrev, op.item.signed and SINT_CTOR[op.item.size] or INT_CTOR[op.item.size], op.n, base.DEC)
        elseif op.k == "cstr" or op.k == "lenstr" or op.k == "note" then
            field(abbrev, "string", op.n)
        elseif op.k == "bytes" or op.k == "lenbytes" or op.k == "rest" or op.k == "pad" then
            field(abbrev, "bytes", op.n)
        end
    end
end

local f_version = field("fuse.encap.version", "uint8", "encapsulation version")
local f_kind = field("fuse.encap.kind", "uint8", "record kind")
local f_dialect = field("fuse.encap.dialect", "uint8", "passthrough dialect")
local f_notes = field("fuse.encap.notes", "uint8", "recorder notes", base.HEX)
local f_minor = field("fuse.encap.minor", "uint32", "negotiated minor")
local f_iflags = field("fuse.encap.init_flags", "uint64", "negotiated INIT flags", base.HEX)
local f_record = field("fuse.encap.record", "uint64", "trace record")
local f_request_in = field("fuse.pair.request_in", "framenum", "request in")
local f_reply_in = field("fuse.pair.reply_in", "framenum", "reply in")
local f_opcode = field("fuse.pair.opcode", "uint32", "opcode of the request answered")
local f_latency = field("fuse.pair.latency_us", "double", "latency (µs)")
local f_cmd = field("fuse.ioctl.cmd", "uint32", "cmd", base.HEX)
local f_result = field("fuse.ioctl.result", "int32", "result")
local f_errno = field("fuse.ioctl.errno", "uint32", "errno")
local f_pid = field("fuse.ioctl.pid", "uint32", "pid")
local f_tid = field("fuse.ioctl.tid", "uint32", "tid")
local f_arglen = field("fuse.ioctl.arg_len", "uint32", "argument length")
local f_path = field("fuse.ioctl.path", "string", "path")
local f_event = field("fuse.event", "string", "event")
local f_reason = field("fuse.reason", "string", "left raw because")
local f_trailing = field("fuse.trailing", "bytes", "bytes past the header's len")
local f_u32 = {}
for _, name in ipairs(G.ioctl_u32) do
    f_u32[name] = field("fuse.ioctl." .. name, "uint32", name)
end
fuse.fields = fields

local DIALECTS = {[0] = "none", [1] = "mainline", [2] = "android"}
local KINDS = {}
for name, code in pairs(G.kinds) do KINDS[code] = name end
local NO_REPLY = {}
for _, op in ipairs(G.no_reply) do NO_REPLY[op] = true end

-- value text, as the Scapy fields' i2repr ---------------------------------------------

local function halves(v, size)
    if size == 8 then
        return v:band(0xFFFFFFFF):tonumber(), v:rshift(32):tonumber()
    end
    return v, 0
end

local function hex(v, size)
    local lo, hi = halves(v, size)
    if hi ~= 0 then return string.format("0x%x%08x", hi, lo) end
    return string.format("0x%x", lo)
end

local function errno_text(v)
    if v < 0 then return string.format("%d (%s)", v, G.errnos[-v] or tostring(-v)) end
    return tostring(v)
end

local function flags_text(v, size, names)
    local lo, hi = halves(v, size)
    local parts, ulo, uhi = {}, 0, 0
    for bit = 0, size * 8 - 1 do
        local word, b = lo, bit
        if bit >= 32 then word, b = hi, bit - 32 end
        if band(word, 2 ^ b) ~= 0 then
            if names[bit] then
                parts[#parts + 1] = names[bit]
            elseif bit >= 32 then
                uhi = uhi + 2 ^ b
            else
                ulo = ulo + 2 ^ b
            end
        end
    end
    if uhi ~= 0 then
        parts[#parts + 1] = string.format("0x%x%08x", uhi, ulo)
    elseif ulo ~= 0 then
        parts[#parts + 1] = string.format("0x%x", ulo)
    end
    if #parts == 0 then return "0" end
    return table.concat(parts, "|")
end

local function mode_text(v)
    local kind = G.file_types[band(v, G.s_ifmt)]
    local perms = string.format("%04o", band(v, 4095))
    if kind then return kind .. "|" .. perms end
    return perms
end

local function open_flags_text(v)
    local acc = band(v, G.accmode_mask)
    local parts = {G.accmodes[acc] or string.format("0o%o", acc)}
    local rest = band(v, bnot(G.accmode_mask))
    for _, pair in ipairs(G.open_flags) do
        if band(rest, pair[1]) == pair[1] then
            parts[#parts + 1] = pair[2]
            rest = band(rest, bnot(pair[1]))
        end
    end
    if rest ~= 0 then parts[#parts + 1] = string.format("0o%o", rest) end
    return table.concat(parts, "|")
end

local function value_text(op, v)
    if op.rep == "hex" then return hex(v, op.size) end
    if op.rep == "flags" then return flags_text(v, op.size, G.tables[op.t]) end
    if op.rep == "errno" then return errno_text(v) end
    if op.rep == "mode" then return mode_text(v) end
    if op.rep == "oflags" then return open_flags_text(v) end
    if op.rep == "enum" then return G.tables[op.t][v] or tostring(v) end
    return tostring(v)
end

-- reading layers -------------------------------------------------------------------

local function read_int(tvb, off, op)
    local r = tvb(off, op.size)
    if op.size == 8 then
        if op.signed then return r:le_int64(), r end
        return r:le_uint64(), r
    end
    if op.signed then return r:le_int(), r end
    return r:le_uint(), r
end

-- bytes as UTF-8 text for labels and string fields (invalid sequences replaced)
local function text(tvb, off, len)
    if len <= 0 then return "" end
    return tvb(off, len):string(ENC_UTF_8)
end

local function as_number(v)
    if type(v) == "number" then return v end
    return v:tonumber()
end

local function raw_layer(tvb, off, stop, tree, reason)
    local range = stop > off and tvb(off, stop - off) or tvb(off, 0)
    local sub = tree:add(fuse, range, string.format("raw %d bytes (%s)", stop - off, reason))
    sub:add(f_reason, range, reason)
    sub:add_expert_info(PI_MALFORMED, PI_WARN, reason)
    if stop > off then
        sub:add(PF["fuse." .. G.raw .. ".load"], range)
    end
    return stop
end

local decode_layer
-- a tree that shows nothing, to measure a layer before showing it
local UNSHOWN
UNSHOWN = setmetatable({}, {__index = function() return function() return UNSHOWN end end})
-- Labels are only worth formatting when the tree is shown (not for filters and -T fields).
local LABELS = true
-- the names (C strings) a message carries, for the Info column
local NAMES = {}

-- decode the fields of `lid` from `off` (not past `stop`) under `tree`; returns the end,
-- the values by field name, and a note when a list inside ended early (the rest is raw).
decode_layer = function(tvb, off, stop, lid, tree, prev)
    local layer = G.layers[lid]
    local vals, note = {}, nil
    for _, op in ipairs(layer.ops) do
        local k = op.k
        if k == "int" then
            if off + op.size > stop then return off, vals, "cut " .. layer.label end
            local v, r = read_int(tvb, off, op)
            vals[op.n] = v
            local item = tree:add_le(PF[op.abbrev], r)
            if LABELS then item:set_text(op.n .. ": " .. value_text(op, v)) end
            off = off + op.size
        elseif k == "bytes" then
            if off + op.size > stop then return off, vals, "cut " .. layer.label end
            if op.size > 0 then tree:add(PF[op.abbrev], tvb(off, op.size)) end
            off = off + op.size
        elseif k == "cstr" then
            local chunk = stop > off and tvb(off, stop - off):raw() or ""
            local z = chunk:find("\0", 1, true)
            local len, nul = z and z - 1 or #chunk, z and 1 or 0
            local s = text(tvb, off, len)
            tree:add(PF[op.abbrev], tvb(off, len + nul), s):set_text(
                op.n .. ": " .. s .. (nul == 1 and "" or " (no NUL)"))
            vals[op.n] = chunk:sub(1, len)
            if tree ~= UNSHOWN and #NAMES < 2 then NAMES[#NAMES + 1] = op.n .. "=" .. s end
            off = off + len + nul
        elseif k == "lenstr" or k == "lenbytes" then
            -- a length field below its fixed part is no element at all (fuse_ext_header)
            local len = as_number(vals[op.from] or 0) - op.minus
            if len < 0 or off + len > stop then return off, vals, "cut " .. layer.label end
            vals[op.n] = len > 0 and tvb(off, len):raw() or ""
            if len > 0 and k == "lenstr" then
                local s = text(tvb, off, len)
                tree:add(PF[op.abbrev], tvb(off, len), s):set_text(op.n .. ": " .. s)
            elseif len > 0 then
                tree:add(PF[op.abbrev], tvb(off, len))
            end
            off = off + len
        elseif k == "pad" then
            local used = op.fixed + #(vals[op.after] or "")
            local len = (-used) % op.align
            if off + len > stop then return off, vals, "cut " .. layer.label end
            if len > 0 then tree:add(PF[op.abbrev], tvb(off, len)) end
            off = off + len
        elseif k == "rest" then
            if stop > off then tree:add(PF[op.abbrev], tvb(off, stop - off)) end
            off = stop
        elseif k == "struct" then
            local sub = tree:add(fuse, tvb(off, 0), op.n .. ": " .. G.layers[op.l].label)
            local start = off
            local why
            off, vals[op.n], why = decode_layer(tvb, off, stop, op.l, sub, nil)
            sub:set_len(off - start)
            if why then return off, vals, why end
        elseif k == "list" or k == "intlist" then
            local count = op.count and prev and prev.count and as_number(prev.count) or nil
            local elem = k == "list" and G.layers[op.l] or nil
            local size = elem and elem.min or op.item.size
            local sub = tree:add(fuse, tvb(off, 0), op.n)
            local start, n = off, 0
            while off < stop and (count == nil or n < count) do
                if stop - off < size and not elem then
                    -- Scapy's FieldListField cannot stop inside an item: no layer at all
                    return off, vals, nil, string.format("%s: %d bytes left of an item of %d",
                                                         layer.label, stop - off, size)
                end
                if stop - off < size then
                    note = string.format("%d bytes of an incomplete %s", stop - off, elem.label)
                    break
                end
                if elem then
                    -- measured first: an incomplete element is not shown, its bytes are raw
                    local _, _, why = decode_layer(tvb, off, stop, op.l, UNSHOWN, nil)
                    if why then
                        note = string.format("%d bytes of an incomplete %s", stop - off, elem.label)
                        break
                    end
                    local item = sub:add(fuse, tvb(off, 0), elem.label)
                    local istart = off
                    off = decode_layer(tvb, off, stop, op.l, item, nil)
                    item:set_len(off - istart)
                else
                    local v, r = read_int(tvb, off, op.item)
                    local shown = sub:add_le(PF[op.abbrev], r)
                    if LABELS then shown:set_text(op.n .. ": " .. value_text(op.item, v)) end
                    off = off + size
                end
                n = n + 1
            end
            if not note and count ~= nil and n < count then
                note = string.format("count is %d, the body holds %d", count, n)
            end
            sub:set_len(off - start)
            sub:append_text(string.format(" (%d)", n))
        end
    end
    return off, vals, note
end

-- choosing a body's layers ----------------------------------------------------------------

local function split(v)  -- a Lua number up to 2^53 as two 32-bit words
    return v % 4294967296, math.floor(v / 4294967296)
end

local function pick(rules, st, body_len, size)
    if rules.bylen then
        local chosen
        for _, step in ipairs(rules.bylen) do
            if body_len >= step.min then chosen = step.p end
        end
        if not chosen then return {e = {}, need = 0, reason = "too short: " .. body_len .. " bytes"} end
        return G.plans[chosen]
    end
    if rules.size0 then
        return G.plans[size == 0 and rules.size0 or rules.sized]
    end
    local minor = math.min(st.minor, G.max_minor)
    local mlo, mhi = split(rules.mask)
    for _, r in ipairs(rules.rules) do
        local blo, bhi = split(r.b)
        if (r.d == nil or r.d == st.dialect) and band(st.flo, mlo) == blo
                and band(st.fhi, mhi) == bhi and minor >= r.lo and minor <= r.hi then
            return G.plans[r.p]
        end
    end
    return {e = {}, need = 0, reason = "no layout for this connection state"}
end

local function decode_body(tvb, off, stop, tree, plan, header, header_lid, what, extension)
    local entries = plan.e
    if extension then
        entries = {}
        for i, e in ipairs(plan.e) do entries[i] = e end
        entries[#entries + 1] = G.extension
    end
    if plan.reason ~= "" then return raw_layer(tvb, off, stop, tree, plan.reason) end
    if stop - off < plan.need then
        return raw_layer(tvb, off, stop, tree, string.format("short %s: needs %d bytes, got %d",
                                                             what, plan.need, stop - off))
    end
    local prev, prev_label, first = header, G.layers[header_lid].label, nil
    local depth = 1
    while off < stop do
        local e = entries[depth]
        if e == nil then
            return raw_layer(tvb, off, stop, tree,
                             string.format("%d unexpected bytes after %s", stop - off, prev_label)), first
        end
        local lid = e
        if type(e) == "table" then
            lid = e.layer or ((prev and band(as_number(prev[e.by] or 0), e.mask) ~= 0) and e.set or e.unset)
        end
        local layer = G.layers[lid]
        if layer.size > 0 and stop - off < layer.size then
            return raw_layer(tvb, off, stop, tree, string.format("short %s: needs %d bytes, got %d",
                                                                 layer.label, layer.size, stop - off)), first
        end
        if layer.whole then  -- a layer that may fail as a whole is measured first
            local _, _, _, broken = decode_layer(tvb, off, stop, lid, UNSHOWN, prev)
            if broken then return raw_layer(tvb, off, stop, tree, broken), first end
        end
        local sub = tree:add(fuse, tvb(off, 0), layer.label)
        local start, vals, note = off, nil, nil
        off, vals, note = decode_layer(tvb, off, stop, lid, sub, prev)
        sub:set_len(off - start)
        first = first or vals
        if note then return raw_layer(tvb, off, stop, tree, note), first end
        prev, prev_label, depth = vals, layer.label, depth + 1
    end
    return off, first
end

-- pairing (first pass) ---------------------------------------------------------------------

local pending, state = {}, {}

function fuse.init()
    pending, state = {}, {}
end

local function header_body(tvb, off, hdr, header_size)
    local rest = tvb:len() - off
    local len = as_number(hdr.len)
    local body = len == 0 and rest or math.max(len - header_size, 0)
    return off + math.min(body, rest)
end

local function dissect_request(tvb, pinfo, tree, off, st)
    if tvb:len() - off < G.in_size then
        raw_layer(tvb, off, tvb:len(), tree, "short fuse_in_header: " .. (tvb:len() - off) .. " bytes")
        return "short request"
    end
    local htree = tree:add(fuse, tvb(off, G.in_size), G.layers[G.in_header].label)
    local _, hdr = decode_layer(tvb, off, off + G.in_size, G.in_header, htree, nil)
    local stop = header_body(tvb, off + G.in_size, hdr, G.in_size)
    local op, key = hdr.opcode, tostring(hdr.unique)
    local name = G.opcodes[op] or tostring(op)
    local rules = G.requests[op]
    local body
    if rules then
        local plan = pick(rules, st, stop - off - G.in_size, nil)
        _, body = decode_body(tvb, off + G.in_size, stop, tree, plan, hdr, G.in_header,
                              name .. " request", hdr.total_extlen ~= 0)
    else
        raw_layer(tvb, off + G.in_size, stop, tree, "unknown opcode " .. op)
    end
    if not pinfo.visited then
        local me = {reply = nil}
        state[pinfo.number] = me
        if not NO_REPLY[op] and key ~= "0" then
            -- the request's size (GETXATTR/LISTXATTR) picks its reply's layout
            local size = body and body.size and as_number(body.size) or nil
            pending[key] = {frame = pinfo.number, opcode = op, size = size, ts = pinfo.abs_ts, me = me}
        end
    end
    local me = state[pinfo.number]
    if me and me.reply then tree:add(f_reply_in, me.reply) end
    if stop < tvb:len() then tree:add(f_trailing, tvb(stop)) end
    local info = string.format("%s unique=%s nodeid=%s", name, key, tostring(hdr.nodeid))
    if #NAMES > 0 then info = info .. " " .. table.concat(NAMES, " ") end
    return info
end

local function dissect_reply(tvb, pinfo, tree, off, st)
    if tvb:len() - off < G.out_size then
        raw_layer(tvb, off, tvb:len(), tree, "short fuse_out_header: " .. (tvb:len() - off) .. " bytes")
        return "short reply"
    end
    local htree = tree:add(fuse, tvb(off, G.out_size), G.layers[G.out_header].label)
    local _, hdr = decode_layer(tvb, off, off + G.out_size, G.out_header, htree, nil)
    local stop = header_body(tvb, off + G.out_size, hdr, G.out_size)
    local body = off + G.out_size
    local key = tostring(hdr.unique)
    local info
    if key == "0" then
        local pid = G.notifies[hdr.error]
        local name = G.notify_names[hdr.error] or ("notify " .. hdr.error)
        local plan = pid and G.plans[pid] or {e = {}, need = 0, reason = "unknown notify code " .. hdr.error}
        decode_body(tvb, body, stop, tree, plan, hdr, G.out_header, name .. " notification", false)
        info = name
    else
        if not pinfo.visited then
            local req = pending[key]
            pending[key] = nil
            state[pinfo.number] = {req = req}
            if req then req.me.reply = pinfo.number end
        end
        local req = (state[pinfo.number] or {}).req
        local name = req and (G.opcodes[req.opcode] or tostring(req.opcode)) or "?"
        if req then
            tree:add(f_request_in, req.frame)
            tree:add(f_opcode, req.opcode):set_text("opcode: " .. name)
            local us = (pinfo.abs_ts - req.ts) * 1e6
            tree:add(f_latency, us):set_text(string.format("latency: %.3f µs", us))
        end
        local plan
        if hdr.error ~= 0 then
            plan = {e = {}, need = 0, reason = ""}
        elseif not req then
            plan = {e = {}, need = 0, reason = "reply to an unknown request: layout depends on its opcode"}
        elseif not G.replies[req.opcode] then
            plan = {e = {}, need = 0, reason = "reply to unknown opcode " .. req.opcode}
        else
            plan = pick(G.replies[req.opcode], st, stop - body, req.size)
        end
        decode_body(tvb, body, stop, tree, plan, hdr, G.out_header, name .. " reply", false)
        info = string.format("%s reply unique=%s %s", name, key, errno_text(hdr.error))
        if hdr.error < 0 then
            tree:add_expert_info(PI_RESPONSE_CODE, PI_NOTE, name .. ": " .. errno_text(hdr.error))
        end
    end
    if stop < tvb:len() then tree:add(f_trailing, tvb(stop)) end
    return info
end

local function dissect_ioctl(tvb, pinfo, tree, off, st)
    if tvb:len() - off < 24 then
        raw_layer(tvb, off, tvb:len(), tree, "short ioctl record")
        return "ioctl"
    end
    local cmd = tvb(off, 4):le_uint()
    local known = G.ioctls[cmd]
    local how = known and known[st.dialect] or nil
    local name = how and how.name or string.format("0x%x", cmd)
    local result, err = tvb(off + 4, 4):le_int(), tvb(off + 8, 4):le_uint()
    tree:add_le(f_cmd, tvb(off, 4)):set_text("cmd: " .. name .. string.format(" (0x%08x)", cmd))
    tree:add_le(f_result, tvb(off + 4, 4))
    tree:add_le(f_errno, tvb(off + 8, 4)):set_text("errno: " .. (err == 0 and "0" or errno_text(-err)))
    tree:add_le(f_pid, tvb(off + 12, 4))
    tree:add_le(f_tid, tvb(off + 16, 4))
    tree:add_le(f_arglen, tvb(off + 20, 4))
    local arg_len = tvb(off + 20, 4):le_uint()
    local arg = off + 24
    local arg_end = math.min(arg + arg_len, tvb:len())
    if not known then
        raw_layer(tvb, arg, arg_end, tree, string.format("unknown /dev/fuse ioctl 0x%x", cmd))
    elseif arg_len ~= known.size then
        raw_layer(tvb, arg, arg_end, tree, string.format("%s takes %d bytes, got %d", name, known.size, arg_len))
    elseif how.u32 then
        tree:add_le(f_u32[how.u32], tvb(arg, 4))
    elseif how.l then
        local sub = tree:add(fuse, tvb(arg, arg_len), G.layers[how.l].label)
        decode_layer(tvb, arg, arg_end, how.l, sub, nil)
    end
    if arg_end < tvb:len() then tree:add(f_path, tvb(arg_end), text(tvb, arg_end, tvb:len() - arg_end)) end
    local outcome = err == 0 and ("= " .. result) or ("= -1 (" .. (G.errnos[err] or err) .. ")")
    return name .. " " .. outcome
end

function fuse.dissector(tvb, pinfo, tree)
    pinfo.cols.protocol = "FUSE"
    LABELS, NAMES = tree.visible, {}
    local root = tree:add(fuse, tvb())
    if tvb:len() < G.encap_size then
        root:add_expert_info(PI_MALFORMED, PI_ERROR, "shorter than the fusetrace encapsulation")
        return
    end
    local flags = tvb(8, 8):le_uint64()
    local st = {kind = tvb(1, 1):uint(), dialect = tvb(2, 1):uint(), minor = tvb(4, 4):le_uint(),
                flo = flags:band(0xFFFFFFFF):tonumber(), fhi = flags:rshift(32):tonumber()}
    local enc = root:add(fuse, tvb(0, G.encap_size), "fusetrace encapsulation")
    enc:add(f_version, tvb(0, 1))
    enc:add(f_kind, tvb(1, 1)):set_text("kind: " .. (KINDS[st.kind] or tostring(st.kind)))
    enc:add(f_dialect, tvb(2, 1)):set_text("dialect: " .. (DIALECTS[st.dialect] or tostring(st.dialect)))
    local notes = {}
    for name, bit in pairs(G.notes) do
        if band(tvb(3, 1):uint(), bit) ~= 0 then notes[#notes + 1] = name end
    end
    table.sort(notes)
    enc:add(f_notes, tvb(3, 1)):set_text("recorder notes: " .. (#notes > 0 and table.concat(notes, "|") or "none"))
    enc:add_le(f_minor, tvb(4, 4))
    enc:add_le(f_iflags, tvb(8, 8))
    enc:add_le(f_record, tvb(16, 8))
    local off, info = G.encap_size, nil
    if st.kind == G.kinds.request then
        info = dissect_request(tvb, pinfo, root, off, st)
    elseif st.kind == G.kinds.reply then
        info = dissect_reply(tvb, pinfo, root, off, st)
    elseif st.kind == G.kinds.ioctl then
        info = dissect_ioctl(tvb, pinfo, root, off, st)
    else
        local shown = text(tvb, off, tvb:len() - off)
        root:add(f_event, tvb(off), shown)
        info = shown
    end
    pinfo.cols.info = info
end

DissectorTable.get("wtap_encap"):add(wtap.USER0, fuse)
