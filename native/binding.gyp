# vircptfs's FUSE addon (session.c), against the system's libfuse 3 (Debian: libfuse3-dev).
# Warnings are errors when CI is set (scripts/test.sh builds with CI=true in CI).
{
  "variables": {
    "werror%": "<!(node -p \"process.env.CI ? 1 : 0\")"
  },
  "targets": [{
    "target_name": "vircptfs_fuse",
    "sources": ["session.c", "ops.c", "replies.c"],
    "include_dirs": ["<!@(pkg-config fuse3 --cflags-only-I | sed s/-I//g)"],
    "libraries": ["<!@(pkg-config fuse3 --libs)"],
    "cflags": ["-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    "conditions": [["werror==1", {"cflags": ["-Werror"]}]]
  }]
}
