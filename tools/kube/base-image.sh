# Runs inside the Debian root made by images.sh (mmdebstrap customize hook, `sh -e`): lays
# Debian's python3 out like python:3.11-slim. The official image has no EXTERNALLY-MANAGED
# marker, has its own pip and setuptools in /usr/local and a `python` command; Debian's bundled
# wheels give the same without any network access.
rm -f /usr/lib/python3*/EXTERNALLY-MANAGED
cd /usr/share/python-wheels
pip=$(echo pip-*.whl)
python3 "$pip/pip" install --quiet --no-index --no-cache-dir "$pip" setuptools-*.whl
ln -sf /usr/bin/python3 /usr/bin/python
rm -rf /var/lib/apt/lists/* /var/cache/apt/* /root/.cache
