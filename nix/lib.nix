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
