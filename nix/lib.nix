# Builtins-only helpers (no nixpkgs `lib`), so everything under nix/ evaluates anywhere,
# including CI machines that have nix-instantiate but no nixpkgs.
rec {
  # Recursive attrset merge: attrs merge key by key, anything else in `b` wins.
  recursiveUpdate = a: b:
    a // builtins.mapAttrs
      (k: v: if builtins.isAttrs v && builtins.isAttrs (a.${k} or null) then recursiveUpdate a.${k} v else v)
      b;

  # `throw` with a prefix that names the attribute path.
  fail = path: msg: builtins.throw "services.ssw-inference.settings.${path}: ${msg}";

  sum = builtins.foldl' (a: b: a + b) 0;

  # Whole seconds (rounded up) of a duration as the ssw config writes it (humantime: "90s",
  # "1m30s", "2m 30s", "500ms", "1h", "2days"); throws naming `path` for anything else, so a
  # drain timeout is never silently misread.
  seconds = path: text:
    let
      # Microseconds per unit (humantime's names).
      units = {
        ns = 0; us = 1; usec = 1; ms = 1000; msec = 1000;
        s = 1000000; sec = 1000000; secs = 1000000; second = 1000000; seconds = 1000000;
        m = 60000000; min = 60000000; mins = 60000000; minute = 60000000; minutes = 60000000;
        h = 3600000000; hr = 3600000000; hrs = 3600000000; hour = 3600000000; hours = 3600000000;
        d = 86400000000; day = 86400000000; days = 86400000000;
      };
      parts = builtins.split "([0-9]+) *([a-z]+)" text;
      matches = builtins.filter builtins.isList parts;
      rest = builtins.concatStringsSep "" (builtins.filter builtins.isString parts);
      # fromJSON reads "08" as nothing: strip leading zeros first.
      number = digits: builtins.fromJSON (builtins.head (builtins.match "0*([0-9]+)" digits));
      known = builtins.all (m: units ? ${builtins.elemAt m 1}) matches;
      us = sum (map (m: number (builtins.head m) * units.${builtins.elemAt m 1}) matches);
    in
    if !(builtins.isString text) || matches == [ ] || !known || builtins.match " *" rest == null
    then fail path "must be a duration such as \"90s\", \"2m\" or \"1m30s\", got ${builtins.toJSON text}"
    else (us + 999999) / 1000000;

  # Bytes of a size as the ssw config writes it ("512MiB", "1GiB", "2MB", "4096"); throws naming
  # `path` for anything else. Redis's own suffixes differ (its "1gb" is GiB), so Nix passes it
  # plain bytes.
  bytes = path: text:
    let
      units = {
        "" = 1; B = 1;
        KB = 1000; MB = 1000000; GB = 1000000000;
        KiB = 1024; MiB = 1048576; GiB = 1073741824;
      };
      m = if builtins.isString text then builtins.match " *0*([0-9]+) *([A-Za-z]*) *" text else null;
    in
    if m == null || !(units ? ${builtins.elemAt m 1})
    then fail path "must be a size such as \"512MiB\" or \"1GiB\", got ${builtins.toJSON text}"
    else builtins.fromJSON (builtins.head m) * units.${builtins.elemAt m 1};

  # Index of `x` in list `xs` (first occurrence), or -1.
  indexOf = x: xs:
    let go = i: if i >= builtins.length xs then -1 else if builtins.elemAt xs i == x then i else go (i + 1);
    in go 0;

  # Elements that occur more than once.
  duplicates = xs:
    builtins.filter (x: builtins.length (builtins.filter (y: y == x) xs) > 1)
      (unique xs);

  unique = builtins.foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ];

  # `toString` for config values that become command-line arguments (floats without padding).
  argString = v:
    if builtins.isFloat v then builtins.toJSON v
    else if builtins.isBool v then (if v then "true" else "false")
    else toString v;

  concatMap = f: xs: builtins.concatLists (map f xs);

  optional = cond: x: if cond then [ x ] else [ ];

  last = xs: builtins.elemAt xs (builtins.length xs - 1);

  optionalAttrs = cond: as: if cond then as else { };

  # Lists the attrs of `set` as { name, value } pairs in name order.
  attrsToList = set: map (name: { inherit name; value = set.${name}; }) (builtins.attrNames set);

  # YAML for JSON-compatible values: block style, every string JSON-quoted (a JSON string is a
  # valid YAML double-quoted scalar), so no value can be misread (`no`, `0.10`, `:`).
  toYAML = v: toYAMLAt "" v + "\n";
  toYAMLAt = indent: v:
    let
      scalar = x: builtins.toJSON x;
      isEmpty = x: (builtins.isAttrs x && x == { }) || (builtins.isList x && x == [ ]);
      isBlock = x: (builtins.isAttrs x || builtins.isList x) && !(isEmpty x);
      key = k: if builtins.match "[A-Za-z_][A-Za-z0-9_.-]*" k != null then k else builtins.toJSON k;
      inner = indent + "  ";
    in
    if builtins.isAttrs v && v != { } then
      builtins.concatStringsSep "\n" (map
        (k:
          let x = v.${k}; in
          if isBlock x then "${indent}${key k}:\n${toYAMLAt inner x}"
          else "${indent}${key k}: ${scalar x}")
        (builtins.attrNames v))
    else if builtins.isList v && v != [ ] then
      builtins.concatStringsSep "\n" (map
        (x:
          if builtins.isAttrs x && x != { } then
            let body = toYAMLAt inner x; in "${indent}- ${builtins.substring (builtins.stringLength inner) (builtins.stringLength body) body}"
          else if isBlock x then "${indent}-\n${toYAMLAt inner x}"
          else "${indent}- ${scalar x}")
        v)
    else scalar v;
}
