{
  description = "vibes: development shell";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      devShells = forAllSystems (pkgs:
        let
          inherit (pkgs) lib stdenv;
        in
        {
          # mkShell's stdenv already brings the C/C++ compiler node-gyp needs (gcc on Linux, clang on macOS).
          default = pkgs.mkShell {
            packages = [
              pkgs.nodejs_22
              pkgs.postgresql_16
              # The bundled store of VIBES_EVENT_BACKEND=jetstream.
              pkgs.nats-server
              pkgs.openssh
              pkgs.python3
              pkgs.gnumake
              pkgs.pkg-config
              pkgs.git
            ] ++ lib.optionals stdenv.isLinux [
              pkgs.chromium
              # unshare and setpriv, and the Perl of the namespace init: the sandbox of sessions and jobs.
              pkgs.util-linux
              pkgs.perl
            ];

            shellHook = lib.optionalString stdenv.isLinux ''
              export PLAYWRIGHT_CHROMIUM_EXECUTABLE_PATH=${pkgs.chromium}/bin/chromium
              export VIBES_TEST_CHROMIUM=${pkgs.chromium}/bin/chromium
            '' + ''
              echo "vibes dev shell: run 'npm install && npm start'"
            '';
          };
        });

      formatter = forAllSystems (pkgs: pkgs.nixpkgs-fmt);
    };
}
